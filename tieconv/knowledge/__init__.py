"""What tieconv knows about models: transformers' tie groups, key names, and how runtimes load ties."""
