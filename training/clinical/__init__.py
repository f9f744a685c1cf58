"""CIS conversion and treatment-response models: the shipped models' training driver."""
