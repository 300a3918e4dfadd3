"""liver-node: the DICOM networking side (SCP, spool, study assembly, jobs, outbox, metrics, CLI)."""
