"""acspeed: fast collectives for PyTorch.

``import acspeed`` registers the ``"acspeed"`` torch.distributed backend, so that

    import torch.distributed as dist
    dist.init_process_group(backend="acspeed")

works with ``env://``, a ``TCPStore`` and under ``torchrun``. (With the package installed, torch
also finds the backend through its ``torch.distributed.backends`` entry point, without the
import.)
"""

from ._acspeed import (  # noqa: F401
    AcspeedDeviceError,
    AcspeedError,
    AcspeedMismatchError,
    AcspeedRemoteError,
    AcspeedTimeoutError,
    __version__,
)
from ._torch import (  # noqa: F401
    AcspeedBackend,
    AcspeedWork,
    explain,
    recv_any,
    register,
    stall_reports,
)

register()
