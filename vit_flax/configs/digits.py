"""The embedded default: a small ViT on scikit-learn's bundled handwritten digits (8x8, no download).

    python -m vit_flax.train --config=vit_flax/configs/digits.py --workdir=/tmp/digits
    python -m vit_flax.train --config=vit_flax/configs/digits.py --workdir=/tmp/digits --config.model.depth=2
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # the model: a registry name and its vit-pytorch keywords. 4x4 patches: vit-pytorch's LayerNorm over a 2x2
    # patch of one channel keeps only the patch's shape, not its brightness (--config.model.patch_size=2 ends
    # near 95% test accuracy where 4x4 patches reach 98%)
    config.model_name = 'vit.ViT'
    config.model = ml_collections.ConfigDict(dict(
        image_size=8, patch_size=4, num_classes=10, channels=1,
        dim=64, depth=4, heads=4, dim_head=16, mlp_dim=128, dropout=0.0, emb_dropout=0.0,
    ))
    # 'supervised', or pretraining / distillation: 'mae', 'simmim', 'mpp', 'mp3', 'dino', 'esvit', 'distill'
    # (vit_flax/training/objectives.py); objective_kwargs override its keywords (vit-pytorch README defaults), e.g.
    # --config.objective=mae --config.objective_kwargs='{"masking_ratio": 0.5}' (distill needs teacher_workdir)
    config.objective = 'supervised'
    config.objective_kwargs = ml_collections.ConfigDict()

    # data
    config.dataset = 'digits'
    config.data_dir = ''
    config.image_size = 8
    # every key of vit_flax/data/augment.py, so that the command line can set any of them; for photographs at 224,
    # say: --config.augment.random_crop_padding=0 --config.augment.random_resized_crop=True --config.augment.flip=True
    config.augment = ml_collections.ConfigDict(dict(
        random_resized_crop=False, random_resized_crop_scale=(0.08, 1.0), random_resized_crop_ratio=(3 / 4, 4 / 3),
        random_crop_padding=1, flip=False, randaugment_ops=0, randaugment_magnitude=0.0,
    ))
    config.mixup_alpha = 0.0  # 0: off; applied on device in the train step
    config.label_smoothing = 0.1
    config.data_workers = 0

    # process: on a CPU run, a step's temporaries reuse the last step's memory instead of faulting in fresh pages
    # (vit_flax/training/allocator.py; Linux with glibc): CPU steps of a second and more run about 20% faster. JAX
    # then runs each step in the calling thread and the process keeps its peak heap; False leaves both as they were
    config.keep_freed_memory = True

    # steps
    config.batch_size = 64  # global, over all processes and devices
    config.total_steps = 3000
    config.eval_batch_size = 256
    config.log_every = 50
    config.eval_every = 1000
    config.checkpoint_every = 1000
    config.keep_checkpoints = 2
    config.seed = 0

    # optimisation (optax AdamW, warmup + cosine)
    config.learning_rate = 3e-3
    config.warmup_steps = 100
    config.min_learning_rate_ratio = 0.01
    config.weight_decay = 0.05
    config.b1 = 0.9
    config.b2 = 0.999
    config.grad_clip_norm = 1.0
    config.grad_accum_steps = 1

    # parallelism: 'jit' (sharding over a mesh) or 'pmap'; mesh axis sizes, -1 takes the remaining devices
    config.parallelism = 'jit'
    # fsdp_min_size: arrays smaller than this stay replicated under FSDP
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2**14))
    config.compute_dtype = 'float32'  # 'bfloat16': bf16 compute, float32 parameters and optimiser state
    # multi-process (multi-host) runs: every process runs the same command with distributed=True. Empty keys fall
    # back to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, then to JAX's detection (Cloud TPU,
    # SLURM, Open MPI, Kubernetes); a key and its variable must agree (vit_flax/training/distributed.py)
    config.distributed = False
    config.coordinator_address = ''  # host:port of process 0
    config.num_processes = ml_collections.config_dict.placeholder(int)
    config.process_id = ml_collections.config_dict.placeholder(int)  # this process: 0 .. num_processes - 1
    # fine-tuning (vit_flax/training/finetune.py). init_from: a checkpoint to start from: a trainer workdir, a
    # `vit-flax import` folder, or a pretrained timm / Hugging Face / big_vision checkpoint or hub name (with
    # model_name 'pretrained_vit.VisionTransformer': vit_flax/configs/finetune.py)
    config.init_from = ''
    config.layer_decay = 1.0  # in (0, 1]: block i of depth learns at lr * layer_decay ** (depth - i); 1.0: off
    config.freeze_backbone = False  # train the classification head alone (a linear probe)
    config.progress_bar = True
    return config
