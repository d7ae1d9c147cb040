"""The policy seam: types, the Policy protocol, the backend registry, the default arm."""
