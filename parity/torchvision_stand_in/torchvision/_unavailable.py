"""The stand-in's names: functions that raise when called and classes that raise when used, one per name, so
that the modules timm, transformers and vit-pytorch import answer every attribute with one of them."""

_WHY = 'this torchvision is a stand-in (parity/torchvision_stand_in) for a torch no torchvision build matches'


def function(qualified_name: str):
    """A function named after `qualified_name` that raises when called."""
    def unavailable(*args, **kwargs):
        raise RuntimeError(f'{qualified_name} is not available: {_WHY}')
    unavailable.__name__ = qualified_name.rpartition('.')[2]
    return unavailable


def module_getattr(module: str, make):
    """A module `__getattr__` answering each public name with `make(module, name)`, made once: subclassing and
    isinstance must see the same class each time."""
    made = {}

    def __getattr__(name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        if name not in made:
            made[name] = make(module, name)
        return made[name]
    return __getattr__


def raising_function(module: str, name: str):
    return function(f'{module}.{name}')


def transform_class(module: str, name: str):
    """Building one works (vit-pytorch builds DINO's augmentations at construction, timm subclasses `ToTensor`);
    calling one raises."""
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
    return type(name, (), {'__init__': __init__, '__call__': function(f'{module}.{name}'), '__module__': module})


def unbuildable_class(module: str, name: str):
    """A class for isinstance checks (timm's dataset factory, its FrozenBatchNorm2d); building one raises."""
    build = function(f'{module}.{name}')
    return type(name, (), {'__init__': lambda self, *args, **kwargs: build(), '__module__': module})
