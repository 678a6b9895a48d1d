"""What one run (or one pack of runs) does on a worker: data, corruption, models, training. Knows nothing of Ray."""
