"""Text-to-image (Stable Diffusion XL): pipeline, calibration window, UNet quantization, DeepCache."""
