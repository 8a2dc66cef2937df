import shutil

import pytest
import torch

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="no CUDA device")
    skip_bart = pytest.mark.skip(reason="Debian bart not installed")
    skip_tools = pytest.mark.skip(reason="Debian ismrmrd-tools not installed")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
        if "bart" in item.keywords and shutil.which("bart") is None:
            item.add_marker(skip_bart)
        if (
            "ismrmrd_tools" in item.keywords
            and shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None
        ):
            item.add_marker(skip_tools)
