"""Lesion detection (ultralytics YOLO, one class "lesion")."""
