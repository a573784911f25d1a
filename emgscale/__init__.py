"""emgscale: sEMG-to-text decoders for emg2qwerty at any scale."""
__version__ = "0.1.0"
