from django.urls import path

from contact import views

app_name = "contact"
urlpatterns = [
    path("", views.contact, name="form"),
    path("thanks/<int:sequence_id>/", views.thanks, name="thanks"),
]
