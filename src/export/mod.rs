//! Using pixelseq models elsewhere: TorchScript modules and Hugging Face-style folders.

pub mod torchscript;
