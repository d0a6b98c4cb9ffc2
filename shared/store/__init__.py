"""The checkpoint store: manifest.json plus one safetensors file per model, written atomically, hashed."""
