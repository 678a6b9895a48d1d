"""What to run and where: grid -> runs, scheduling, progress, resume. The only place Ray lives."""
