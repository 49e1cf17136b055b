"""The stand-in's other names: functions that raise when called and classes that raise when built, one per name,
so that any attribute of its modules answers with one of them and says what this package is."""

_WHY = ('this torchaudio is a stand-in (parity/torchaudio_stand_in) for a torch no torchaudio build matches: it '
        'provides only transforms.Spectrogram and functional.spectrogram')


def module_getattr(module: str, make):
    """A module `__getattr__` answering each public name with `make(module, name)`, made once: isinstance and
    subclassing must see the same class each time."""
    made = {}

    def __getattr__(name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        if name not in made:
            made[name] = make(module, name)
        return made[name]
    return __getattr__


def raising_function(module: str, name: str):
    """A function named `name` that raises when called."""
    def unavailable(*args, **kwargs):
        raise RuntimeError(f'{module}.{name} is not available: {_WHY}')
    unavailable.__name__ = name
    return unavailable


def unbuildable_class(module: str, name: str):
    """A class named `name` that raises when built."""
    build = raising_function(module, name)
    return type(name, (), {'__init__': lambda self, *args, **kwargs: build(), '__module__': module})
