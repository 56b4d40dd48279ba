"""Layer specs, sampling plans, running plans on a device in batches, and the profile store."""
