"""What is done with the models: sampling, chunked refining, the codes format, copy detection, training."""
