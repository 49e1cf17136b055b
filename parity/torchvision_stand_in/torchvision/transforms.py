"""Every transform name exists; calling one raises, saying that this is a stand-in."""


class _Unavailable:
    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f'torchvision.transforms.{self.name} is not available: this torchvision is a stand-in '
                           '(parity/torchvision_stand_in) for a torch no torchvision build matches; vit-pytorch needs '
                           'it only for its DINO / EsViT / JEPA augmentations')


def __getattr__(name: str):
    if name.startswith('__'):
        raise AttributeError(name)
    return _Unavailable(name)
