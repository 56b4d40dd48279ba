"""JCW search: prunable layers of a torch model, genomes, NSGA-II with JCW selection, export."""
