"""Datasets (synthetic, AFLW2000-3D, 300W-LP, unlabelled images with MediaPipe pseudo-landmarks), crops, augmentation."""
