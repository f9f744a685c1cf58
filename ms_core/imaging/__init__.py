"""Images before segmentation: DICOM import, preprocessing, rigid registration, the MNI atlas maps
(anatomy), FLAIR appearance checks.
"""
