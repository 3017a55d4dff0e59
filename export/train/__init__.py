"""What every trainer of the shipped models shares: data sources (Dubai, tree plots, NAIP, Banepa), weak labels,
augmentation, the step loop and checkpoints. The trainers themselves (train_landcover.py, train_treecrowns.py) and
adaptation (adapt.py) stay one module each beside this package and import from it."""
