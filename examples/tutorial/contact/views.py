from django.http import Http404
from django.shortcuts import redirect, render

from contact.forms import ContactForm
from contact.sequences import ContactFormSequence
from sequence import UnknownSequence


def contact(request):
    if request.method == "POST":
        form = ContactForm(request.POST)
        if form.is_valid():
            seq = ContactFormSequence(**form.cleaned_data)
            return redirect("contact:thanks", sequence_id=seq.id)
    else:
        form = ContactForm()
    return render(request, "contact/contact.html", {"form": form})


def thanks(request, sequence_id):
    try:
        seq = ContactFormSequence.get(sequence_id)
    except UnknownSequence:
        raise Http404("No such message.") from None
    return render(request, "contact/thanks.html", {"seq": seq})
