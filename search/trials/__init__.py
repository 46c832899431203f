"""What one trial does, and when it stops: apply the plan, prescreen, fine-tune, export to ONNX, stop early."""
