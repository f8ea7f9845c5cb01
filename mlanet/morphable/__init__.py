"""Face models: file format, loaders (ICT-FaceKit, Basel Face Model), the torch module."""
