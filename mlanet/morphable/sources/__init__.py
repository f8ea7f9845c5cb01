"""Readers of upstream face-model releases the user supplies: ICT-FaceKit (``ict_archive`` reads the release,
``ict`` builds the project's file, ``ict_topology`` names its topology facts) and the Basel Face Model
(``bfm``). The project never ships their data."""
