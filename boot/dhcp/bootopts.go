package dhcp

import (
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// ubootScript is the first file U-Boot's distro boot fetches over TFTP (bootcmd_dhcp);
// boot/tftp serves a script there that runs `pxe get` for the board.
const ubootScript = "boot.scr.uimg"

// addBootOptions adds what r's kind of boot client needs to find the TFTP server.
// Plain clients get nothing. Both modes use it; only full mode adds an address.
func (s *Server) addBootOptions(r *request, reply *dhcpv4.DHCPv4) {
	switch r.kind {
	case kindPi, kindPiROM:
		// A Pi ignores a reply without "Raspberry Pi Boot" in option 43; the 3B ROM
		// wants it padded. Option 60 "PXEClient" marks a PXE reply (PXE spec 2.2), and
		// option 97 is echoed as dnsmasq does. Option 67 is ignored by every Pi.
		menu := piMenu
		if r.kind == kindPiROM {
			menu = pi3Menu
		}
		reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, piOption43(menu)))
		reply.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
		if v := r.msg.Options.Get(dhcpv4.OptionClientMachineIdentifier); len(v) > 0 {
			reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, v))
		}
	case kindPXE:
		// U-Boot takes next-server (siaddr) and the file field; option 67 is the same
		// name for clients that read options instead.
		reply.BootFileName = ubootScript
		reply.UpdateOption(dhcpv4.OptBootFileName(ubootScript))
		if r.pxeVendor {
			reply.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
		}
	default:
		return
	}
	// The TFTP server is this host. Pis fall back to option 54 anyway, but siaddr
	// and option 66 are what every other client reads.
	reply.ServerIPAddr = net.IP(s.cfg.ServerIP.AsSlice())
	reply.UpdateOption(dhcpv4.OptTFTPServerName(s.cfg.ServerIP.String()))
}
