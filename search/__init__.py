"""Search: spaces, samplers (XGBoost cost model), objectives, bit allocation."""
