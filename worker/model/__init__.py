"""What a model is and how it runs: loading and saving versions, the
networks, preprocessing, precision, ONNX Runtime and int8, and which backend serves. The
classify and training floors both stand on it; it imports neither."""
