"""radflow.imaging: the imaging domain: DICOM reading and networking, selection, volumes and
geometry, SEG/RTSTRUCT writing, inference."""
