"""medxfer: transfer-learning studies on clinical imaging, built on MONAI."""

__version__ = "0.1.0"
