"""``pocketvision label``: a fast local labelling tool for keypoints and classes."""
