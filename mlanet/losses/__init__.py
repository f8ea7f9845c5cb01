"""Training losses: parameter/vertex supervision, landmarks, photometric, regularisers."""
