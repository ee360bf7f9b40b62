"""Spry (forward-mode federated finetuning) as a Flower app over spry's Rust core.

- ``spry_flwr_native``: the PyO3 bindings (``Experiment``, ``Server``, ``SpryError``,
  ``run_in_process``, ``read_settings``, ``peak_rss_mib``);
- ``spry_flwr.strategy``: ``SpryStrategy``, the server side over Flower's Grid;
- ``spry_flwr.server_app`` / ``spry_flwr.client_app``: the ServerApp and the ClientApp.

This module stays light on purpose: ``flwr run`` executes it (``find_spec``) without needing the
native module.
"""

__all__ = ["native"]


def native():
    """The compiled bindings (imported on first use)."""
    import spry_flwr_native

    return spry_flwr_native
