"""Detection training: data, augmentation, evaluation."""
