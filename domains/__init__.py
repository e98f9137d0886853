"""Each domain's train/serve contract: prompts, labels, readers, the adapter card's serving section. Imports core only."""
