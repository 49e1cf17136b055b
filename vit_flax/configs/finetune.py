"""Fine-tune a pretrained ViT (timm, Hugging Face, big_vision: anything `vit_flax.pretrained.read` takes) on the
digits, or on any dataset with --config.dataset=... (vit_flax/training/finetune.py says what is taken from where):

    python -m vit_flax.train --config=vit_flax/configs/finetune.py --workdir=/tmp/ft --config.init_from=HUB_DIR
    python -m vit_flax.train --config=vit_flax/configs/finetune.py --workdir=/tmp/ft \
        --config.init_from=timm/vit_base_patch16_224.augreg2_in21k_ft_in1k --config.dataset=image_folder \
        --config.data_dir=/data/pets --config.image_size=224 --config.channels=3 --config.model.scan_layers=True

The checkpoint gives the model's keywords and its normalisation: `config.model` starts empty and takes only what the
run changes (num_classes, img_size: the dataset's by default), the JAX-only options, or keywords the checkpoint
must have. A new head is drawn where the classes differ and the position embedding resampled where the size does.
"""

import ml_collections

from vit_flax.configs import digits


def get_config() -> ml_collections.ConfigDict:
    config = digits.get_config()
    config.model_name = 'pretrained_vit.VisionTransformer'
    config.model = ml_collections.ConfigDict()  # from the checkpoint; keys here override or pin its keywords
    config.init_from = ''  # required: --config.init_from=...
    # BEiT / timm fine-tuning recipe, scaled to short runs: lower rate, layer-wise decay, short warmup
    config.learning_rate = 1e-3
    config.layer_decay = 0.75
    config.warmup_steps = 50
    config.total_steps = 500
    config.eval_every = 500
    config.checkpoint_every = 500
    return config
