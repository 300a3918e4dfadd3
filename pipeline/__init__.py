"""liver-node pipeline: pure processing of series on disk (phases, detection, lesions, classification, reports)."""
