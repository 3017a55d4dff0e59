"""Writes resources/models/landcover_class_area.model3, the example graphical model (QGIS Model Designer):

    raster -> landseg:landcover -> polygons of one class (native:extractbyattribute on class_name)
           -> area statistics of that class (qgis:basicstatisticsforfields on area_m2)

Run with QGIS's Python: `QT_QPA_PLATFORM=offscreen python3 resources/models/make_example_model.py`. The model is
committed; this script is how it was made (the Model Designer writes the same XML).
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

OUT = Path(__file__).with_name("landcover_class_area.model3")


def build() -> QgsProcessingModelAlgorithm:
    m = QgsProcessingModelAlgorithm("Land cover area of one class", "LandSeg examples")
    m.addModelParameter(QgsProcessingParameterRasterLayer("image", "Image (RGB)"), QgsProcessingModelParameter("image"))
    m.addModelParameter(
        QgsProcessingParameterString("class_name", "Class", defaultValue="vegetation"),
        QgsProcessingModelParameter("class_name"),
    )
    src = QgsProcessingModelChildParameterSource

    lc = QgsProcessingModelChildAlgorithm("landseg:landcover")
    lc.setChildId("landcover")
    lc.setDescription("Land cover (LandSeg)")
    lc.addParameterSources("INPUT", [src.fromModelParameter("image")])
    m.addChildAlgorithm(lc)

    ex = QgsProcessingModelChildAlgorithm("native:extractbyattribute")
    ex.setChildId("one_class")
    ex.setDescription("Polygons of the class")
    ex.addParameterSources("INPUT", [src.fromChildOutput("landcover", "OUTPUT")])
    ex.addParameterSources("FIELD", [src.fromStaticValue("class_name")])
    ex.addParameterSources("OPERATOR", [src.fromStaticValue(0)])  # =
    ex.addParameterSources("VALUE", [src.fromModelParameter("class_name")])
    out = QgsProcessingModelOutput("class_polygons", "Class polygons")
    out.setChildId("one_class")
    out.setChildOutputName("OUTPUT")
    ex.setModelOutputs({"class_polygons": out})
    m.addChildAlgorithm(ex)

    st = QgsProcessingModelChildAlgorithm("qgis:basicstatisticsforfields")
    st.setChildId("area_stats")
    st.setDescription("Area statistics (m²)")
    st.addParameterSources("INPUT_LAYER", [src.fromChildOutput("one_class", "OUTPUT")])
    st.addParameterSources("FIELD_NAME", [src.fromStaticValue("area_m2")])
    report = QgsProcessingModelOutput("area_report", "Area statistics report")
    report.setChildId("area_stats")
    report.setChildOutputName("OUTPUT_HTML_FILE")
    st.setModelOutputs({"area_report": report})
    m.addChildAlgorithm(st)

    # The destinations the outputs appear as (what the Model Designer adds for each model output).
    m.addModelParameter(
        QgsProcessingParameterVectorDestination("one_class:class_polygons", "Class polygons"),
        QgsProcessingModelParameter("one_class:class_polygons"),
    )
    m.addModelParameter(
        QgsProcessingParameterFileDestination("area_stats:area_report", "Area statistics report", "HTML (*.html)"),
        QgsProcessingModelParameter("area_stats:area_report"),
    )
    return m


if __name__ == "__main__":
    app = QgsApplication([], False)
    app.initQgis()
    model = build()
    if not model.toFile(str(OUT)):
        sys.exit(f"cannot write {OUT}")
    print(OUT)
    app.exitQgis()
