"""tff_hsq: Hyper-Sphere Quantization (Dai et al., arXiv 1911.04655) for TensorFlow Federated."""

from tff_hsq import learning
from tff_hsq import presets
from tff_hsq import privacy
from tff_hsq import runtime
from tff_hsq import secure
from tff_hsq.factory import HSQFactory
from tff_hsq.quantizer import Message
from tff_hsq.quantizer import Quantizer
from tff_hsq.secure import SecureHSQFactory

__version__ = '0.1.0'
