"""ml_collections training configs; pass one to `python -m vit_flax.train --config=vit_flax/configs/NAME.py`."""
