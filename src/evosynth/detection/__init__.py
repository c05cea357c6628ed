"""Detection: DetectNet's grid targets and decoding (``grid``), mAP (``metrics``), and the
task the loop uses (``task``)."""
