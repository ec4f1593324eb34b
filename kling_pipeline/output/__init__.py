"""Stage 4: the output folder: shot files, the final cut, the manifest, the contact sheet,
thumbnails, video probing.
"""
