"""Add-ons: components of ``method.hard_samples`` that are not hard-sample generators (ICE's camera-aware proxies,
a mean teacher); each module registers itself (``registry.register_hard_samples``). A base may build on an add-on
(ICE's L_cam is ``camera_proxy.CameraProxyLoss``): add-ons sit below bases and generators and import neither."""

from . import camera_proxy, mean_teacher  # noqa: F401 - imported for their side effect: registering the add-ons
