"""Evaluation protocols: AFLW2000-3D 68-point NME (mean of yaw bins), MICC Florence dense RMSE."""
