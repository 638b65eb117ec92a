"""Memory models: training (weights, grads, optimizer, activations) and serving (weights, activations, KV cache)."""
