"""Evaluation engines: many conditions of one network from a shared prefix (`evaluate`),
occluded images from the original activations (`occlusion`), and the streaming search for the
images that excite a filter most (`top_activations`)."""
