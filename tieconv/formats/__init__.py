"""How checkpoints are stored: safetensors, torch pickles, GGUF, and Hub repos read remotely."""
