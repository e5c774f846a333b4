"""Models: plain `nn.Module`s built from typed args; each returns logits."""
