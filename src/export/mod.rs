//! Using pixelseq models elsewhere (`pixelseq export`): a TorchScript module that plain PyTorch
//! loads ([`torchscript`]), and a Hugging Face-style folder of weights, config and model card
//! ([`hf`], [`card`]) that `eval` and `predict` open like a run folder.

pub mod card;
pub mod hf;
pub mod torchscript;
