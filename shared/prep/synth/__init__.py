"""The synthetic twin: NIH ChestX-ray14 and RSNA Pneumonia look-alikes written in the real layouts."""
