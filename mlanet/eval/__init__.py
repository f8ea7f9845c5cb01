"""Evaluation protocols: AFLW2000-3D 68-point NME (mean of yaw bins), in-the-wild 68-point NME,
video landmark jitter, MICC Florence dense RMSE."""
