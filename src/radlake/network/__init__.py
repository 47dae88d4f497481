"""The DICOM network side of the lake: the C-STORE receiver (issue 13)."""
